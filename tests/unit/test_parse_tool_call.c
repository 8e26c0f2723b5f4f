/*
 * test_parse_tool_call.c - unit tests of the streaming tool-call parser
 * (api/parse/tool_call.c, tool_hermes.c, tool_qwen3coder.c, tool_minimax.c,
 * tool_mistral.c, tool_xmlargs.c).
 *
 * Each case gives the model output and, written by hand from the format definitions in
 * tool_call.h, the content and the calls it must produce. Arguments are compared with
 * json_equal (structurally), except where a case gives the exact text (numbers kept as
 * written). Every case is run whole, split at every position, one byte at a time and in
 * random multi-way splits; each run must give the expected outputs and the same position
 * of each call within the content, and its events must be well-formed.
 */
#include "api/parse/output.h"
#include "api/parse/reasoning.h"
#include "api/parse/tool_call.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* The Qwen3-Coder cases' tools (OpenAI shape). */
static const char *const TOOLS =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {"
    "\"type\": \"object\", \"properties\": {"
    "\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\"},"
    "\"metric\": {\"type\": \"boolean\"}, \"opts\": {\"type\": \"object\"},"
    "\"tags\": {\"type\": \"array\"}, \"ratio\": {\"type\": \"number\"},"
    "\"note\": {\"type\": [\"string\", \"null\"]}, \"zip\": {\"type\": \"string\"},"
    "\"when\": {\"anyOf\": [{\"type\": \"integer\"}, {\"type\": \"string\"}]}}}}},"
    " {\"type\": \"function\", \"function\": {\"name\": \"list_files\"}},"
    " {\"type\": \"function\"}, 42]";

typedef struct tcase {
    const char *what;
    prs_tool_format_t fmt;
    bool tools;        /* use TOOLS */
    const char *prime; /* NULL: none */
    const char *input;
    const char *content; /* expected content */
    const char *calls;   /* expected: JSON array of [name, args]; args an object (compared */
                         /* structurally) or a string (the exact text expected)           */
} tcase_t;

#define H  PRS_TOOL_HERMES
#define X  PRS_TOOL_QWEN3_CODER
#define M  PRS_TOOL_MINIMAX_M2
#define TC "<tool_call>\n"
#define TE "\n</tool_call>"
#define MC "<minimax:tool_call>\n"
#define ME "</minimax:tool_call>"
#define MI "<invoke name=\"get_weather\">\n"
#define MP "<parameter name="
#define S  PRS_TOOL_MISTRAL
#define TK "[TOOL_CALLS]"
#define AR "[ARGS]"
#define CI "[CALL_ID]"

static const tcase_t cases[] = {
    /* ---- Hermes ---- */
    {"hermes single", H, false, NULL,
     TC "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}" TE, "",
     "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"hermes compact text", H, false, NULL,
     TC "{\"name\": \"f\", \"arguments\": {\"a\": [1, 2], \"b\": {\"c\": \"x y\"}}}" TE, "",
     "[[\"f\", \"{\\\"a\\\":[1,2],\\\"b\\\":{\\\"c\\\":\\\"x y\\\"}}\"]]"},
    {"hermes several calls", H, false, NULL,
     TC "{\"name\": \"a\", \"arguments\": {\"x\": 1}}" TE "\n" TC
        "{\"name\": \"b\", \"arguments\": {\"y\": 2}}" TE "\n\n" TC
        "{\"name\": \"c\", \"arguments\": {}}" TE "\n",
     "", "[[\"a\", {\"x\": 1}], [\"b\", {\"y\": 2}], [\"c\", {}]]"},
    {"hermes content before", H, false, NULL,
     "Let me check the weather.\n\n" TC "{\"name\": \"get_weather\", \"arguments\": {\"city\": "
     "\"Paris\"}}" TE,
     "Let me check the weather.\n\n", "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"hermes content after", H, false, NULL,
     TC "{\"name\": \"f\", \"arguments\": {}}" TE "\n\n  Done, see above.", "Done, see above.",
     "[[\"f\", {}]]"},
    {"hermes no calls", H, false, NULL, "Just text, a < b and <tool> and </tool_call>.",
     "Just text, a < b and <tool> and </tool_call>.", "[]"},
    {"hermes partial tag at end", H, false, NULL, "Text <tool_ca", "Text <tool_ca", "[]"},
    {"hermes malformed json", H, false, NULL,
     "Hi " TC "{\"name\": \"f\", \"arguments\": {\"a\": }}" TE " after",
     "Hi " TC "{\"name\": \"f\", \"arguments\": {\"a\": }}" TE " after", "[]"},
    {"hermes missing name", H, false, NULL, TC "{\"arguments\": {\"a\": 1}}" TE,
     TC "{\"arguments\": {\"a\": 1}}" TE, "[]"},
    {"hermes empty name", H, false, NULL, TC "{\"name\": \"\", \"arguments\": {}}" TE,
     TC "{\"name\": \"\", \"arguments\": {}}" TE, "[]"},
    {"hermes name not a string", H, false, NULL, TC "{\"name\": 3}" TE, TC "{\"name\": 3}" TE,
     "[]"},
    {"hermes arguments array", H, false, NULL, TC "{\"name\": \"f\", \"arguments\": [1]}" TE,
     TC "{\"name\": \"f\", \"arguments\": [1]}" TE, "[]"},
    {"hermes text after object", H, false, NULL, TC "{\"name\": \"f\"} extra" TE,
     TC "{\"name\": \"f\"} extra" TE, "[]"},
    {"hermes not json", H, false, NULL, TC "get_weather(city=Paris)" TE,
     TC "get_weather(city=Paris)" TE, "[]"},
    {"hermes truncated", H, false, NULL, "Sure. " TC "{\"name\": \"f\", \"arguments\": {\"a\": 1}}",
     "Sure. " TC "{\"name\": \"f\", \"arguments\": {\"a\": 1}}", "[]"},
    {"hermes truncated in string", H, false, NULL,
     TC "{\"name\": \"f\", \"arguments\": {\"a\": \"x",
     TC "{\"name\": \"f\", \"arguments\": {\"a\": \"x", "[]"},
    {"hermes valid then truncated", H, false, NULL,
     TC "{\"name\": \"a\"}" TE "\n" TC "{\"name\": \"b\"", TC "{\"name\": \"b\"", "[[\"a\", {}]]"},
    {"hermes valid then malformed", H, false, NULL,
     TC "{\"name\": \"a\"}" TE "\n" TC "oops" TE "\n" TC "{\"name\": \"c\"}" TE, TC "oops" TE "\n",
     "[[\"a\", {}], [\"c\", {}]]"},
    {"hermes nested braces and closing tag in strings", H, false, NULL,
     TC "{\"name\": \"run\", \"arguments\": {\"code\": \"if (a) { b(); } </tool_call> {{\", "
        "\"n\": {\"m\": [1, {\"k\": \"}\\\"]\"}]}}}" TE,
     "",
     "[[\"run\", {\"code\": \"if (a) { b(); } </tool_call> {{\", \"n\": {\"m\": [1, {\"k\": "
     "\"}\\\"]\"}]}}]]"},
    {"hermes arguments as string", H, false, NULL,
     TC "{\"name\": \"f\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\", \\\"n\\\": [1]}\"}" TE,
     "", "[[\"f\", {\"city\": \"Paris\", \"n\": [1]}]]"},
    {"hermes arguments string not an object", H, false, NULL,
     TC "{\"name\": \"f\", \"arguments\": \"Paris\"}" TE,
     TC "{\"name\": \"f\", \"arguments\": \"Paris\"}" TE, "[]"},
    {"hermes missing and null arguments", H, false, NULL,
     TC "{\"name\": \"a\"}" TE TC "{\"name\": \"b\", \"arguments\": null}" TE, "",
     "[[\"a\", {}], [\"b\", {}]]"},
    {"hermes parameters alias", H, false, NULL,
     TC "{\"name\": \"f\", \"parameters\": {\"q\": \"x\"}}" TE, "", "[[\"f\", {\"q\": \"x\"}]]"},
    {"hermes escaped keys and name", H, false, NULL,
     TC "{\"n\\u0061me\": \"g\\u00e9t\", \"arguments\": {\"k\": 1}}" TE, "",
     "[[\"g\xc3\xa9t\", {\"k\": 1}]]"},
    {"hermes unicode", H, false, NULL,
     "\xe5\xa5\xbd\xe7\x9a\x84 " TC "{\"name\": \"get_\xe5\xa4\xa9\xe6\xb0\x94\", \"arguments\": "
     "{\"city\": \"\xe6\x9d\xb1\xe4\xba\xac\", \"e\": \"\xf0\x9f\x99\x82\", \"esc\": "
     "\"\\u00e9\\ud83d\\ude42\"}}" TE,
     "\xe5\xa5\xbd\xe7\x9a\x84 ",
     "[[\"get_\xe5\xa4\xa9\xe6\xb0\x94\", {\"city\": \"\xe6\x9d\xb1\xe4\xba\xac\", \"e\": "
     "\"\xf0\x9f\x99\x82\", \"esc\": \"\xc3\xa9\xf0\x9f\x99\x82\"}]]"},
    {"hermes numbers kept as written", H, false, NULL,
     TC "{\"name\": \"f\", \"arguments\": {\"id\": 12345678901234567890, \"x\": 3.10, \"e\": "
        "-1E+2}}" TE,
     "", "[[\"f\", \"{\\\"id\\\":12345678901234567890,\\\"x\\\":3.10,\\\"e\\\":-1E+2}\"]]"},
    {"hermes raw newline in a string", H, false, NULL,
     TC "{\"name\": \"f\", \"arguments\": {\"a\": \"x\n" TE "\nafter",
     TC "{\"name\": \"f\", \"arguments\": {\"a\": \"x\n" TE "\nafter", "[]"},
    {"hermes lone surrogate", H, false, NULL, TC "{\"name\": \"f\\ud800\"}" TE,
     TC "{\"name\": \"f\\ud800\"}" TE, "[]"},
    {"hermes tag with no newlines", H, false, NULL,
     "<tool_call>{\"name\":\"f\",\"arguments\":{\"a\":true}}</tool_call>", "",
     "[[\"f\", {\"a\": true}]]"},
    {"hermes xml body is malformed", H, false, NULL, TC "<function=f>\n</function>" TE,
     TC "<function=f>\n</function>" TE, "[]"},
    /* the server primed a named function: the prefix is parsed, never content */
    {"hermes primed named function", H, false, TC "{\"name\": \"get_weather\", \"arguments\": ",
     "{\"city\": \"Paris\"}}" TE, "", "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"hermes primed required", H, false, TC,
     "{\"name\": \"f\", \"arguments\": {\"a\": 1}}" TE "\n" TC "{\"name\": \"g\"}" TE, "",
     "[[\"f\", {\"a\": 1}], [\"g\", {}]]"},
    {"hermes primed but malformed", H, false, TC, "I cannot do that.", "I cannot do that.", "[]"},
    {"hermes primed but malformed closed", H, false, TC "{\"name\": ", "42}" TE " ok",
     "42}" TE " ok", "[]"},

    /* ---- Qwen3-Coder XML ---- */
    {"xml example", X, true, NULL,
     TC "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
        "</parameter>\n</function>" TE,
     "", "[[\"get_weather\", {\"city\": \"Paris\", \"days\": 3}]]"},
    {"xml exact args text", X, true, NULL,
     TC "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
        "</parameter>\n</function>" TE,
     "", "[[\"get_weather\", \"{\\\"city\\\":\\\"Paris\\\",\\\"days\\\":3}\"]]"},
    {"xml schema conversions", X, true, NULL,
     TC "<function=get_weather>\n"
        "<parameter=days>\nthree\n</parameter>\n"
        "<parameter=metric>\nTrue\n</parameter>\n"
        "<parameter=opts>\n{\"a\": [1, 2], \"b\": 1.50}\n</parameter>\n"
        "<parameter=tags>\n[\"x\", \"y\"]\n</parameter>\n"
        "<parameter=ratio>\n0.5\n</parameter>\n"
        "<parameter=zip>\n01234\n</parameter>\n"
        "<parameter=note>\nnull\n</parameter>\n"
        "<parameter=when>\n 7 \n</parameter>\n"
        "<parameter=city>\n42\n</parameter>\n"
        "</function>" TE,
     "",
     "[[\"get_weather\", {\"days\": \"three\", \"metric\": true, \"opts\": {\"a\": [1, 2], \"b\": "
     "1.5}, \"tags\": [\"x\", \"y\"], \"ratio\": 0.5, \"zip\": \"01234\", \"note\": null, "
     "\"when\": 7, \"city\": \"42\"}]]"},
    {"xml schema fallbacks to string", X, true, NULL,
     TC "<function=get_weather>\n"
        "<parameter=metric>\nyes\n</parameter>\n"
        "<parameter=opts>\nnot json\n</parameter>\n"
        "<parameter=tags>\n{\"a\": 1}\n</parameter>\n"
        "<parameter=ratio>\n1,5\n</parameter>\n"
        "<parameter=note>\nhello\n</parameter>\n"
        "<parameter=when>\nsoon\n</parameter>\n"
        "</function>" TE,
     "",
     "[[\"get_weather\", {\"metric\": \"yes\", \"opts\": \"not json\", \"tags\": \"{\\\"a\\\": "
     "1}\", "
     "\"ratio\": \"1,5\", \"note\": \"hello\", \"when\": \"soon\"}]]"},
    {"xml number kept as written", X, true, NULL,
     TC "<function=get_weather>\n<parameter=ratio>\n3.10\n</parameter>\n<parameter=days>\n"
        "12345678901234567890\n</parameter>\n</function>" TE,
     "", "[[\"get_weather\", \"{\\\"ratio\\\":3.10,\\\"days\\\":12345678901234567890}\"]]"},
    {"xml no schema", X, true, NULL,
     TC "<function=unknown_fn>\n"
        "<parameter=a>\n3\n</parameter>\n"
        "<parameter=b>\ntrue\n</parameter>\n"
        "<parameter=c>\nnull\n</parameter>\n"
        "<parameter=d>\n{\"k\": [1, {\"z\": \"w\"}]}\n</parameter>\n"
        "<parameter=e>\nParis\n</parameter>\n"
        "<parameter=f>\n[1,\n</parameter>\n"
        "<parameter=g>\n\"quoted\"\n</parameter>\n"
        "<parameter=h>\nTrue\n</parameter>\n"
        "</function>" TE,
     "",
     "[[\"unknown_fn\", {\"a\": 3, \"b\": true, \"c\": null, \"d\": {\"k\": [1, {\"z\": \"w\"}]}, "
     "\"e\": \"Paris\", \"f\": \"[1,\", \"g\": \"quoted\", \"h\": \"True\"}]]"},
    {"xml tool without parameters schema", X, true, NULL,
     TC "<function=list_files>\n<parameter=path>\n/tmp\n</parameter>\n<parameter=n>\n2\n"
        "</parameter>\n</function>" TE,
     "", "[[\"list_files\", {\"path\": \"/tmp\", \"n\": 2}]]"},
    {"xml newlines: one stripped each side", X, true, NULL,
     TC "<function=get_weather>\n<parameter=city>\n\nline1\nline2\n\n</parameter>\n"
        "<parameter=zip>x</parameter>\n<parameter=note>  spaced  </parameter>\n</function>" TE,
     "",
     "[[\"get_weather\", {\"city\": \"\\nline1\\nline2\\n\", \"zip\": \"x\", \"note\": \"  spaced  "
     "\"}]]"},
    {"xml closing tags inside a value", X, true, NULL,
     TC "<function=get_weather>\n<parameter=city>\nprint(\"</tool_call>\") {\"x\": 1}\n"
        "</parameter>\n</function>" TE,
     "", "[[\"get_weather\", {\"city\": \"print(\\\"</tool_call>\\\") {\\\"x\\\": 1}\"}]]"},
    {"xml bare function", X, true, NULL,
     "Calling.\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
     "Done.",
     "Calling.\nDone.", "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"xml missing </parameter>", X, true, NULL,
     TC "<function=get_weather>\n<parameter=city>\nParis\n<parameter=days>\n3\n</function>" TE, "",
     "[[\"get_weather\", {\"city\": \"Paris\", \"days\": 3}]]"},
    {"xml two blocks and two functions in one block", X, true, NULL,
     "Checking both.\n" TC "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
     "</function>" TE "\n" TC "<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n"
     "</function>\n<function=list_files>\n</function>" TE,
     "Checking both.\n",
     "[[\"get_weather\", {\"city\": \"Paris\"}], [\"get_weather\", {\"city\": \"Rome\"}], "
     "[\"list_files\", {}]]"},
    {"xml no parameters", X, true, NULL, TC "<function=list_files>\n</function>" TE, "",
     "[[\"list_files\", {}]]"},
    {"xml repeated parameter keeps the last", X, true, NULL,
     TC "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n1\n"
        "</parameter>\n<parameter=city>\nRome\n</parameter>\n</function>" TE,
     "", "[[\"get_weather\", {\"days\": 1, \"city\": \"Rome\"}]]"},
    {"xml unicode", X, true, NULL,
     TC "<function=get_weather>\n<parameter=city>\n\xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x99\x82\n"
        "</parameter>\n</function>" TE,
     "", "[[\"get_weather\", {\"city\": \"\xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x99\x82\"}]]"},
    {"xml control characters escaped", X, true, NULL,
     TC "<function=get_weather>\n<parameter=city>\na\tb\"c\\d\x01\n</parameter>\n</function>" TE,
     "", "[[\"get_weather\", {\"city\": \"a\\tb\\\"c\\\\d\\u0001\"}]]"},
    {"xml truncated", X, true, NULL, "Ok. " TC "<function=get_weather>\n<parameter=city>\nPar",
     "Ok. " TC "<function=get_weather>\n<parameter=city>\nPar", "[]"},
    {"xml truncated after function", X, true, NULL,
     TC "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n",
     TC "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n", "[]"},
    {"xml junk between parameters", X, true, NULL,
     TC
     "<function=get_weather>\nthe city is\n<parameter=city>\nParis\n</parameter>\n</function>" TE,
     TC
     "<function=get_weather>\nthe city is\n<parameter=city>\nParis\n</parameter>\n</function>" TE,
     "[]"},
    {"xml empty block", X, true, NULL, TC TE " x", TC TE " x", "[]"},
    {"xml json body is malformed", X, true, NULL, TC "{\"name\": \"f\"}" TE,
     TC "{\"name\": \"f\"}" TE, "[]"},
    {"xml bad function name", X, true, NULL, TC "<function=>\n</function>" TE,
     TC "<function=>\n</function>" TE, "[]"},
    {"xml partial tags at end", X, true, NULL, "a <funct", "a <funct", "[]"},
    {"xml primed named function", X, true, TC "<function=get_weather>\n",
     "<parameter=city>\nParis\n</parameter>\n</function>" TE, "",
     "[[\"get_weather\", {\"city\": \"Paris\"}]]"},

    /* ---- MiniMax-M2 XML ---- */
    {"minimax example", M, true, NULL,
     MC MI MP "\"city\">Paris</parameter>\n" MP "\"days\">3</parameter>\n</invoke>\n" ME, "",
     "[[\"get_weather\", \"{\\\"city\\\":\\\"Paris\\\",\\\"days\\\":3}\"]]"},
    {"minimax reasoning-free content around", M, true, NULL,
     "Let me look.\n" MC MI MP "\"city\">Paris</parameter>\n</invoke>\n" ME "\n\nDone.",
     "Let me look.\nDone.", "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"minimax schema conversions", M, true, NULL,
     MC MI MP "\"days\">three</parameter>\n" MP "\"metric\">True</parameter>\n" MP
              "\"opts\">{\"a\": [1, 2], \"b\": 1.50}</parameter>\n" MP
              "\"tags\">[\"x\", \"y\"]</parameter>\n" MP "\"ratio\">0.5</parameter>\n" MP
              "\"zip\">01234</parameter>\n" MP "\"note\">null</parameter>\n" MP
              "\"when\"> 7 </parameter>\n" MP "\"city\">42</parameter>\n</invoke>\n" ME,
     "",
     "[[\"get_weather\", {\"days\": \"three\", \"metric\": true, \"opts\": {\"a\": [1, 2], \"b\": "
     "1.5}, \"tags\": [\"x\", \"y\"], \"ratio\": 0.5, \"zip\": \"01234\", \"note\": null, "
     "\"when\": 7, \"city\": \"42\"}]]"},
    {"minimax schema fallbacks to string", M, true, NULL,
     MC MI MP "\"metric\">yes</parameter>" MP "\"opts\">not json</parameter>" MP
              "\"tags\">{\"a\": 1}</parameter>" MP "\"when\">soon</parameter></invoke>" ME,
     "",
     "[[\"get_weather\", {\"metric\": \"yes\", \"opts\": \"not json\", \"tags\": \"{\\\"a\\\": "
     "1}\", \"when\": \"soon\"}]]"},
    {"minimax number kept as written", M, true, NULL,
     MC MI MP "\"ratio\">3.10</parameter>\n" MP
              "\"days\">12345678901234567890</parameter>\n</invoke>\n" ME,
     "", "[[\"get_weather\", \"{\\\"ratio\\\":3.10,\\\"days\\\":12345678901234567890}\"]]"},
    {"minimax no schema", M, true, NULL,
     MC "<invoke name=\"unknown_fn\">\n" MP "\"a\">3</parameter>\n" MP "\"b\">true</parameter>\n" MP
        "\"c\">{\"k\": [1]}</parameter>\n" MP "\"e\">Paris</parameter>\n" MP
        "\"h\">True</parameter>\n</invoke>\n" ME,
     "",
     "[[\"unknown_fn\", {\"a\": 3, \"b\": true, \"c\": {\"k\": [1]}, \"e\": \"Paris\", "
     "\"h\": \"True\"}]]"},
    {"minimax several invokes and blocks", M, true, NULL,
     "Both.\n" MC MI MP "\"city\">Paris</parameter>\n</invoke>\n"
     "<invoke name=\"list_files\">\n</invoke>\n" ME "\n" MC MI MP
     "\"city\">Rome</parameter>\n</invoke>\n" ME,
     "Both.\n",
     "[[\"get_weather\", {\"city\": \"Paris\"}], [\"list_files\", {}], [\"get_weather\", "
     "{\"city\": \"Rome\"}]]"},
    {"minimax quoting of names", M, true, NULL,
     MC "<invoke name='get_weather'>" MP "'city'>Paris</parameter>" MP
        "days>2</parameter></invoke>" ME "<minimax:tool_call><invoke name=list_files>"
        "</invoke></minimax:tool_call>",
     "", "[[\"get_weather\", {\"city\": \"Paris\", \"days\": 2}], [\"list_files\", {}]]"},
    {"minimax whitespace of values stripped", M, true, NULL,
     MC MI MP "\"city\">\n  New York \n\n</parameter>" MP
              "\"note\">\ta\nb </parameter>\n</invoke>" ME,
     "", "[[\"get_weather\", {\"city\": \"New York\", \"note\": \"a\\nb\"}]]"},
    {"minimax missing </parameter>", M, true, NULL,
     MC MI MP "\"city\">Paris\n" MP "\"days\">3\n</invoke>\n" ME, "",
     "[[\"get_weather\", {\"city\": \"Paris\", \"days\": 3}]]"},
    {"minimax closing tags inside a value", M, true, NULL,
     MC MI MP "\"city\">echo '</minimax:tool_call>' <b></parameter>\n</invoke>\n" ME, "",
     "[[\"get_weather\", {\"city\": \"echo '</minimax:tool_call>' <b>\"}]]"},
    {"minimax repeated parameter keeps the last", M, true, NULL,
     MC MI MP "\"city\">Paris</parameter>" MP "\"city\">Rome</parameter></invoke>" ME, "",
     "[[\"get_weather\", {\"city\": \"Rome\"}]]"},
    {"minimax unicode and escapes", M, true, NULL,
     MC MI MP "\"city\">\xe6\x9d\xb1\xe4\xba\xac \"q\" \\ \xf0\x9f\x99\x82</parameter></invoke>" ME,
     "",
     "[[\"get_weather\", {\"city\": \"\xe6\x9d\xb1\xe4\xba\xac \\\"q\\\" \\\\ "
     "\xf0\x9f\x99\x82\"}]]"},
    {"minimax truncated", M, true, NULL, "Ok. " MC MI MP "\"city\">Par",
     "Ok. " MC MI MP "\"city\">Par", "[]"},
    {"minimax truncated after invoke", M, true, NULL,
     MC MI MP "\"city\">Paris</parameter>\n</invoke>\n",
     MC MI MP "\"city\">Paris</parameter>\n</invoke>\n", "[]"},
    {"minimax empty block", M, true, NULL, MC ME " x", MC ME " x", "[]"},
    {"minimax junk between parameters", M, true, NULL,
     MC MI "city is " MP "\"city\">Paris</parameter></invoke>" ME,
     MC MI "city is " MP "\"city\">Paris</parameter></invoke>" ME, "[]"},
    {"minimax bad invoke name", M, true, NULL, MC "<invoke name=\"\">\n</invoke>" ME,
     MC "<invoke name=\"\">\n</invoke>" ME, "[]"},
    /* a block is one region: a bad invoke gives back the whole block, good invokes included */
    {"minimax one bad invoke spoils its block", M, true, NULL,
     MC MI MP "\"city\">Paris</parameter></invoke>\n<invoke name=\"\"></invoke>\n" ME,
     MC MI MP "\"city\">Paris</parameter></invoke>\n<invoke name=\"\"></invoke>\n" ME, "[]"},
    {"minimax unclosed invoke", M, true, NULL, MC MI MP "\"city\">Paris</parameter>\n" ME,
     MC MI MP "\"city\">Paris</parameter>\n" ME, "[]"},
    {"minimax malformed then valid", M, true, NULL,
     MC "oops\n" ME "\n" MC MI MP "\"city\">Oslo</parameter></invoke>" ME " tail",
     MC "oops\n" ME "\ntail", "[[\"get_weather\", {\"city\": \"Oslo\"}]]"},
    {"minimax valid then malformed then valid", M, true, NULL,
     MC "<invoke name=\"list_files\"></invoke>" ME MC "<invoke name=x>" ME MC
        "<invoke name=\"list_files\"></invoke>" ME,
     MC "<invoke name=x>" ME, "[[\"list_files\", {}], [\"list_files\", {}]]"},
    {"minimax other formats are text", M, true, NULL,
     TC "{\"name\": \"f\"}" TE " <function=f></function>",
     TC "{\"name\": \"f\"}" TE " <function=f></function>", "[]"},
    {"minimax partial tag at end", M, true, NULL, "a <minimax:tool_ca", "a <minimax:tool_ca", "[]"},
    {"minimax primed named", M, true, "</think>\n\n" MC MI,
     MP "\"city\">Paris</parameter>\n</invoke>\n" ME, "",
     "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"minimax primed required", M, true, "</think>\n\n" MC "<invoke name=\"",
     "get_weather\">" MP "\"days\">4</parameter></invoke>" ME, "",
     "[[\"get_weather\", {\"days\": 4}]]"},
    {"minimax primed but malformed", M, true, "</think>\n\n" MC "<invoke name=\"", "I will not.",
     "I will not.", "[]"},

    /* ---- Mistral ([TOOL_CALLS]); a third element of an expected call is its id ---- */
    {"mistral v13 single", S, false, NULL, TK "get_weather" AR "{\"city\": \"Paris\"}", "",
     "[[\"get_weather\", {\"city\": \"Paris\"}, null]]"},
    {"mistral compact text", S, false, NULL,
     TK "get_weather" AR "{\"city\": \"Paris\", \"days\": 3, \"x\": 3.10, \"n\": [1, {}]}", "",
     "[[\"get_weather\", \"{\\\"city\\\":\\\"Paris\\\",\\\"days\\\":3,\\\"x\\\":3.10,\\\"n\\\":"
     "[1,{}]}\"]]"},
    {"mistral parallel calls", S, false, NULL,
     TK "a" AR "{\"x\": 1}" TK "b" AR "{\"y\": [1, 2]}\n" TK "list_files" AR "{}", "",
     "[[\"a\", {\"x\": 1}], [\"b\", {\"y\": [1, 2]}], [\"list_files\", {}]]"},
    {"mistral content before", S, false, NULL,
     "Let me check the weather.\n\n" TK "get_weather" AR "{\"city\": \"Paris\"}",
     "Let me check the weather.\n\n", "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"mistral content after", S, false, NULL, TK "f" AR "{}\n\n  Done, see above.",
     "Done, see above.", "[[\"f\", {}]]"},
    {"mistral no calls", S, false, NULL, "Text with [ARGS], [TOOL_CALL] and {\"a\": 1} [x]",
     "Text with [ARGS], [TOOL_CALL] and {\"a\": 1} [x]", "[]"},
    {"mistral partial tag at end", S, false, NULL, "Text [TOOL_CA", "Text [TOOL_CA", "[]"},
    {"mistral brackets, braces and the tag in strings", S, false, NULL,
     TK "run" AR "{\"code\": \"if (a) { b[0] = ']'; } [TOOL_CALLS]x[ARGS]{ {{\", \"n\": {\"m\": "
        "[1, {\"k\": \"}\\\"]\\\\\"}, []]}}",
     "",
     "[[\"run\", {\"code\": \"if (a) { b[0] = ']'; } [TOOL_CALLS]x[ARGS]{ {{\", \"n\": {\"m\": "
     "[1, {\"k\": \"}\\\"]\\\\\"}, []]}}]]"},
    {"mistral escapes and unicode", S, false, NULL,
     "\xe5\xa5\xbd " TK "get_\xe5\xa4\xa9\xe6\xb0\x94" AR
     "{\"s\": \"a\\\"b\\\\c\\n\\t\\u00e9\\ud83d\\ude42\", \"t\": \"\xe6\x9d\xb1\xe4\xba\xac\"}",
     "\xe5\xa5\xbd ",
     "[[\"get_\xe5\xa4\xa9\xe6\xb0\x94\", {\"s\": \"a\\\"b\\\\c\\n\\t\xc3\xa9\xf0\x9f\x99\x82\", "
     "\"t\": \"\xe6\x9d\xb1\xe4\xba\xac\"}]]"},
    {"mistral v11 call id kept", S, false, NULL,
     TK "get_weather" CI "a1B2c3D4e" AR "{\"city\": \"Paris\"}" TK "f" CI "000000002" AR "{}", "",
     "[[\"get_weather\", {\"city\": \"Paris\"}, \"a1B2c3D4e\"], [\"f\", {}, \"000000002\"]]"},
    {"mistral call ids not in Mistral's form are dropped", S, false, NULL,
     TK "f" CI "abc" AR "{}" TK "g" CI "call_1234" AR "{}" TK "h" CI "abcdefghij" AR "{}", "",
     "[[\"f\", {}, null], [\"g\", {}, null], [\"h\", {}, null]]"},
    {"mistral whitespace around the name", S, false, NULL,
     TK " get_weather [ARGS] {\"city\": \"Paris\"}" TK "\nf\n" CI "123456789" AR "\n{}", "",
     "[[\"get_weather\", {\"city\": \"Paris\"}, null], [\"f\", {}, \"123456789\"]]"},
    {"mistral without [ARGS]", S, false, NULL, TK "get_weather{\"city\": \"Paris\"}", "",
     "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"mistral name characters", S, false, NULL, TK "ns.tool:get-x_1" AR "{}", "",
     "[[\"ns.tool:get-x_1\", {}]]"},
    {"mistral json array (v3)", S, false, NULL,
     TK
     "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"123456789\"}, "
     "{\"name\": \"b\", \"arguments\": \"{\\\"y\\\": [2]}\", \"id\": \"12\"}, {\"name\": \"c\"}]",
     "",
     "[[\"get_weather\", {\"city\": \"Paris\"}, \"123456789\"], [\"b\", {\"y\": [2]}, null], "
     "[\"c\", {}, null]]"},
    {"mistral json array with a space (SentencePiece)", S, false, NULL,
     "Sure.\n" TK " [ {\"name\": \"f\", \"parameters\": {\"q\": \"]}\"}} ] after", "Sure.\nafter",
     "[[\"f\", {\"q\": \"]}\"}]]"},
    {"mistral truncated arguments", S, false, NULL, "Sure. " TK "f" AR "{\"a\": [1, {\"b\": 2}",
     "Sure. " TK "f" AR "{\"a\": [1, {\"b\": 2}", "[]"},
    {"mistral truncated in a string", S, false, NULL, TK "f" AR "{\"a\": \"x}]",
     TK "f" AR "{\"a\": \"x}]", "[]"},
    {"mistral truncated in the name", S, false, NULL, "x " TK "get_wea", "x " TK "get_wea", "[]"},
    {"mistral truncated after the tag", S, false, NULL, "x " TK, "x " TK, "[]"},
    {"mistral truncated array", S, false, NULL, TK "[{\"name\": \"f\"}, {\"name\"",
     TK "[{\"name\": \"f\"}, {\"name\"", "[]"},
    {"mistral arguments not an object", S, false, NULL, TK "f" AR "[1, 2] and " TK "g" AR "\"x\"",
     TK "f" AR "[1, 2] and " TK "g" AR "\"x\"", "[]"},
    {"mistral malformed json", S, false, NULL, TK "f" AR "{\"a\": } after",
     TK "f" AR "{\"a\": } after", "[]"},
    {"mistral raw newline in a string ends the call", S, false, NULL,
     TK "f" AR "{\"a\": \"x\n\"}" TK "g" AR "{}", TK "f" AR "{\"a\": \"x\n\"}", "[[\"g\", {}]]"},
    {"mistral name with a space", S, false, NULL, TK "get weather" AR "{}",
     TK "get weather" AR "{}", "[]"},
    {"mistral name not UTF-8", S, false, NULL, TK "f\xff" AR "{}", TK "f\xff" AR "{}", "[]"},
    {"mistral name too long", S, false, NULL,
     TK "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" AR
        "{}",
     TK "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" AR
        "{}",
     "[]"},
    /* 255 + 2 bytes: the name is given up before the 2-byte character, not inside it */
    {"mistral name too long in a character", S, false, NULL,
     TK "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaa"
        "\xc3\xa9" AR "{}",
     TK "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaa"
        "\xc3\xa9" AR "{}",
     "[]"},
    /* exactly 256 bytes is a name */
    {"mistral longest name", S, false, NULL,
     TK "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaa"
        "\xc3\xa9" AR "{}",
     "",
     "[[\""
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaa"
     "\xc3\xa9\", {}]]"},
    {"mistral empty name", S, false, NULL, TK AR "{}", TK AR "{}", "[]"},
    {"mistral doubled tag", S, false, NULL, TK TK "f" AR "{}", TK, "[[\"f\", {}]]"},
    {"mistral unknown tag after the name", S, false, NULL, TK "f[ARG]{}", TK "f[ARG]{}", "[]"},
    {"mistral id without [ARGS]", S, false, NULL, TK "f" CI "123456789{}", TK "f" CI "123456789{}",
     "[]"},
    {"mistral empty array", S, false, NULL, TK "[] x", TK "[] x", "[]"},
    {"mistral array of non-objects", S, false, NULL, TK "[1, 2]", TK "[1, 2]", "[]"},
    {"mistral array with a bad element", S, false, NULL,
     TK "[{\"name\": \"a\"}, {\"arguments\": {}}]", TK "[{\"name\": \"a\"}, {\"arguments\": {}}]",
     "[]"},
    {"mistral text after the array element", S, false, NULL, TK "[{\"name\": \"a\"} x]",
     TK "[{\"name\": \"a\"} x]", "[]"},
    {"mistral malformed then valid", S, false, NULL,
     TK "oops " TK "get_weather" AR "{\"city\": \"Oslo\"} tail", TK "oops tail",
     "[[\"get_weather\", {\"city\": \"Oslo\"}]]"},
    {"mistral valid then truncated", S, false, NULL,
     TK "a" AR "{}" TK "b" AR "{\"c\": ", TK "b" AR "{\"c\": ", "[[\"a\", {}]]"},
    {"mistral other formats are text", S, false, NULL,
     TC "{\"name\": \"f\"}" TE " <function=f></function>",
     TC "{\"name\": \"f\"}" TE " <function=f></function>", "[]"},
    /* the server primed a forced call: the prefix is parsed, never content */
    {"mistral primed named", S, false, TK "get_weather" AR, "{\"city\": \"Paris\"}", "",
     "[[\"get_weather\", {\"city\": \"Paris\"}]]"},
    {"mistral primed named with an id", S, false, TK "get_weather" CI,
     "a1b2c3d4e" AR "{\"city\": \"Paris\"}", "",
     "[[\"get_weather\", {\"city\": \"Paris\"}, \"a1b2c3d4e\"]]"},
    {"mistral primed required", S, false, TK,
     "get_weather" AR "{\"city\": \"Paris\"}" TK "f" AR "{}", "",
     "[[\"get_weather\", {\"city\": \"Paris\"}], [\"f\", {}]]"},
    {"mistral primed named array", S, false, TK "[{\"name\": \"get_weather\", \"arguments\": ",
     "{\"city\": \"Paris\"}, \"id\": \"abcDEF123\"}]", "",
     "[[\"get_weather\", {\"city\": \"Paris\"}, \"abcDEF123\"]]"},
    {"mistral primed but malformed", S, false, TK, "I cannot do that.", "I cannot do that.", "[]"},
    {"mistral primed but malformed array", S, false, TK "[", "{\"name\": 4}] ok",
     "{\"name\": 4}] ok", "[]"},

    /* ---- no format ---- */
    {"none passes everything", PRS_TOOL_NONE, false, NULL, TC "{\"name\": \"f\"}" TE,
     TC "{\"name\": \"f\"}" TE, "[]"},
    {"none passes Mistral calls", PRS_TOOL_NONE, false, NULL, TK "f" AR "{}", TK "f" AR "{}", "[]"},
};

/* ---- running a case ---------------------------------------------------------------- */

typedef struct outcome {
    char *content;
    size_t content_len;
    json_t *calls; /* [[name, args text, content offset], ...] */
    json_t *ids;   /* [the model's id or null, ...] */
} outcome_t;

static void outcome_free(outcome_t *o)
{
    free(o->content);
    json_decref(o->calls);
    json_decref(o->ids);
}

/* Feeds the case's input cut at cuts[0..ncut) and collects what the events say. */
static outcome_t run_split(const tcase_t *c, const size_t *cuts, size_t ncut)
{
    json_t *tools = c->tools ? json_loads(TOOLS, 0, NULL) : NULL;
    assert_true(!c->tools || tools != NULL);
    prs_tool_parser_t *p = NULL;
    assert_int_equal(prs_tool_parser_create(c->fmt, tools, &p, NULL), TDM_OK);
    json_decref(tools); /* the parser keeps its own copy */
    if (c->prime != NULL) {
        assert_int_equal(prs_tool_parser_prime(p, c->prime, strlen(c->prime), NULL), TDM_OK);
    }
    prs_buf_t content = {0};
    json_t *calls = json_array();
    json_t *cur = NULL; /* the call being assembled */
    size_t n = strlen(c->input), at = 0;
    for (size_t i = 0; i <= ncut + 1; i++) {
        if (i <= ncut) {
            size_t to = i < ncut ? cuts[i] : n;
            assert_int_equal(prs_tool_parser_feed(p, c->input + at, to - at, NULL), TDM_OK);
            at = to;
        } else {
            assert_int_equal(prs_tool_parser_finish(p, NULL), TDM_OK);
            assert_false(prs_tool_parser_in_call(p));
        }
        const prs_tool_event_t *ev = prs_tool_parser_events(p);
        for (size_t k = 0; k < prs_tool_parser_n_events(p); k++) {
            assert_int_equal(ev[k].text[ev[k].len], '\0');
            switch (ev[k].kind) {
            case PRS_TOOL_EV_CONTENT:
                assert_null(cur);
                assert_true(ev[k].len > 0);
                assert_int_equal(prs_buf_append(&content, ev[k].text, ev[k].len), TDM_OK);
                break;
            case PRS_TOOL_EV_CALL_BEGIN:
                assert_null(cur);
                assert_int_equal(ev[k].call, json_array_size(calls));
                cur = json_pack("[s, s, I]", ev[k].text, "", (json_int_t)content.len);
                break;
            case PRS_TOOL_EV_CALL_ARGS: {
                assert_non_null(cur);
                assert_int_equal(ev[k].call, json_array_size(calls));
                char *joined = NULL;
                assert_true(asprintf(&joined, "%s%s", json_string_value(json_array_get(cur, 1)),
                                     ev[k].text) > 0);
                json_array_set_new(cur, 1, json_string(joined));
                free(joined);
                break;
            }
            case PRS_TOOL_EV_CALL_END:
                assert_non_null(cur);
                assert_int_equal(ev[k].call, json_array_size(calls));
                json_array_append_new(calls, cur);
                cur = NULL;
                break;
            }
        }
        prs_tool_parser_clear_events(p);
    }
    assert_null(cur);
    /* the accessors agree with the events; only Mistral calls carry the model's ids */
    assert_int_equal(prs_tool_parser_n_calls(p), json_array_size(calls));
    json_t *ids = json_array();
    for (size_t k = 0; k < json_array_size(calls); k++) {
        json_t *e = json_array_get(calls, k);
        assert_string_equal(prs_tool_parser_call_name(p, k),
                            json_string_value(json_array_get(e, 0)));
        assert_string_equal(prs_tool_parser_call_args(p, k),
                            json_string_value(json_array_get(e, 1)));
        const char *id = prs_tool_parser_call_id(p, k);
        assert_true(id == NULL || c->fmt == PRS_TOOL_MISTRAL);
        json_array_append_new(ids, id != NULL ? json_string(id) : json_null());
    }
    assert_null(prs_tool_parser_call_name(p, json_array_size(calls)));
    assert_null(prs_tool_parser_call_id(p, json_array_size(calls)));
    prs_tool_parser_destroy(p);
    outcome_t o = {.content_len = content.len, .calls = calls, .ids = ids};
    o.content = prs_buf_take(&content);
    return o;
}

/* Checks an outcome against the case's expectations. */
static void check_outcome(size_t ci, const outcome_t *o, const char *how)
{
    const tcase_t *c = &cases[ci];
    if (o->content_len != strlen(c->content) || memcmp(o->content, c->content, o->content_len)) {
        fail_msg("%s (%s): content\n  want '%s'\n  got  '%s'", c->what, how, c->content,
                 o->content);
    }
    json_error_t jerr;
    json_t *want = json_loads(c->calls, 0, &jerr);
    if (want == NULL) {
        fail_msg("%s: bad expected calls: %s", c->what, jerr.text);
    }
    if (json_array_size(want) != json_array_size(o->calls)) {
        char *got = json_dumps(o->calls, 0);
        fail_msg("%s (%s): want %zu calls, got %s", c->what, how, json_array_size(want), got);
    }
    for (size_t k = 0; k < json_array_size(want); k++) {
        json_t *w = json_array_get(want, k), *g = json_array_get(o->calls, k);
        const char *gname = json_string_value(json_array_get(g, 0));
        const char *gargs = json_string_value(json_array_get(g, 1));
        assert_string_equal(gname, json_string_value(json_array_get(w, 0)));
        json_t *wargs = json_array_get(w, 1);
        if (json_is_string(wargs)) {
            if (strcmp(gargs, json_string_value(wargs)) != 0) {
                fail_msg("%s (%s): call %zu args\n  want %s\n  got  %s", c->what, how, k,
                         json_string_value(wargs), gargs);
            }
        } else {
            json_t *ga = json_loads(gargs, 0, &jerr);
            if (ga == NULL || !json_is_object(ga) || !json_equal(ga, wargs)) {
                char *ws = json_dumps(wargs, JSON_COMPACT);
                fail_msg("%s (%s): call %zu args\n  want %s\n  got  %s", c->what, how, k, ws,
                         gargs);
            }
            json_decref(ga);
        }
        json_t *wid = json_array_get(w, 2), *gid = json_array_get(o->ids, k);
        if (wid != NULL && !json_equal(wid, gid)) {
            fail_msg("%s (%s): call %zu id: want %s, got %s", c->what, how, k,
                     json_is_string(wid) ? json_string_value(wid) : "none",
                     json_is_string(gid) ? json_string_value(gid) : "none");
        }
    }
    json_decref(want);
}

static void test_cases_whole(void **state)
{
    (void)state;
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        outcome_t o = run_split(&cases[ci], NULL, 0);
        check_outcome(ci, &o, "whole");
        outcome_free(&o);
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

static void check_split(size_t ci, const outcome_t *whole, const size_t *cuts, size_t ncut,
                        const char *how)
{
    outcome_t o = run_split(&cases[ci], cuts, ncut);
    check_outcome(ci, &o, how);
    /* calls at the same places in the content */
    if (!json_equal(o.calls, whole->calls)) {
        char *a = json_dumps(whole->calls, 0), *b = json_dumps(o.calls, 0);
        fail_msg("%s (%s): calls differ from the whole run\n  whole %s\n  split %s", cases[ci].what,
                 how, a, b);
    }
    outcome_free(&o);
}

/* Property: any split gives the expected outputs, with calls at the same content offsets. */
static void test_cases_every_split(void **state)
{
    (void)state;
    uint64_t rng = 0x2545F4914F6CDD1Dull;
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        outcome_t whole = run_split(&cases[ci], NULL, 0);
        size_t n = strlen(cases[ci].input);
        for (size_t cut = 0; cut <= n; cut++) {
            check_split(ci, &whole, &cut, 1, "one cut");
        }
        size_t *cuts = malloc((n + 1) * sizeof(*cuts));
        for (size_t i = 0; i < n; i++) {
            cuts[i] = i + 1;
        }
        check_split(ci, &whole, cuts, n, "bytewise");
        for (int t = 0; t < 100; t++) {
            size_t k = (size_t)(next_rand(&rng) % (n + 1));
            for (size_t i = 0; i < k; i++) {
                cuts[i] = (size_t)(next_rand(&rng) % (n + 1));
            }
            qsort(cuts, k, sizeof(*cuts), cmp_size);
            check_split(ci, &whole, cuts, k, "random cuts");
        }
        free(cuts);
        outcome_free(&whole);
    }
}

/* ---- formats, errors, limits ------------------------------------------------------- */

static void test_formats(void **state)
{
    (void)state;
    assert_int_equal(prs_tool_format_from_template(NULL), PRS_TOOL_NONE);
    assert_int_equal(prs_tool_format_from_template("{{ messages }}"), PRS_TOOL_NONE);
    assert_int_equal(prs_tool_format_from_template("... <tool_call>\n{\"name\": ... </tool_call>"),
                     PRS_TOOL_HERMES);
    assert_int_equal(
        prs_tool_format_from_template("<tool_call>\n<function=x>\n<parameter=y>\n</tool_call>"),
        PRS_TOOL_QWEN3_CODER);
    /* only one of the two XML markers: still Hermes */
    assert_int_equal(prs_tool_format_from_template("<tool_call><function=x></tool_call>"),
                     PRS_TOOL_HERMES);
    assert_int_equal(prs_tool_format_from_template("{{ '<minimax:tool_call>' }}<tool_call>"),
                     PRS_TOOL_MINIMAX_M2);
    assert_int_equal(prs_tool_format_from_template("<|start|>assistant<|channel|>final"),
                     PRS_TOOL_HARMONY);
    assert_int_equal(prs_tool_format_from_template("{{- '[TOOL_CALLS]' + name + '[ARGS]' }}"),
                     PRS_TOOL_MISTRAL);
    /* Mistral's marker wins over the XML ones (a tool description may show them), not over
     * harmony's and MiniMax's */
    assert_int_equal(
        prs_tool_format_from_template("[TOOL_CALLS]<tool_call><function=x><parameter="),
        PRS_TOOL_MISTRAL);
    assert_int_equal(prs_tool_format_from_template("[TOOL_CALLS]<minimax:tool_call>"),
                     PRS_TOOL_MINIMAX_M2);
    assert_int_equal(prs_tool_format_from_template("<|channel|>[TOOL_CALLS]"), PRS_TOOL_HARMONY);
    assert_int_equal(prs_tool_format_from_template("[TOOL_CALL] [ARGS]"), PRS_TOOL_NONE);
    const prs_tool_format_t all[] = {PRS_TOOL_NONE,       PRS_TOOL_HERMES,  PRS_TOOL_QWEN3_CODER,
                                     PRS_TOOL_MINIMAX_M2, PRS_TOOL_HARMONY, PRS_TOOL_MISTRAL};
    const char *const names[] = {"none",       "hermes",  "qwen3_coder",
                                 "minimax_m2", "harmony", "mistral"};
    for (size_t i = 0; i < 6; i++) {
        prs_tool_format_t f = PRS_TOOL_NONE;
        assert_string_equal(prs_tool_format_name(all[i]), names[i]);
        assert_int_equal(prs_tool_format_from_name(names[i], &f, NULL), TDM_OK);
        assert_int_equal(f, all[i]);
    }
    tdm_error_t err;
    tdm_error_clear(&err);
    prs_tool_format_t f = PRS_TOOL_HERMES;
    assert_int_equal(prs_tool_format_from_name("json", &f, &err), TDM_ERR_INVALID_PARAM);
    assert_int_equal(f, PRS_TOOL_HERMES);
    assert_non_null(strstr(tdm_error_msg(&err), "minimax_m2"));
    assert_non_null(strstr(tdm_error_msg(&err), "mistral"));
    assert_int_equal(prs_tool_format_from_name(NULL, &f, NULL), TDM_ERR_INVALID_PARAM);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* The real chat templates (tests/fixtures/templates) select their model's format. */
static void test_formats_of_real_templates(void **state)
{
    (void)state;
    const char *src = getenv("TANDEM_SOURCE_DIR");
    if (src == NULL) {
        skip();
    }
    static const struct {
        const char *file;
        prs_tool_format_t fmt;
    } want[] = {
        {"gpt-oss.jinja", PRS_TOOL_HARMONY},
        {"devstral-small-2.jinja", PRS_TOOL_MISTRAL},
        {"mistral-v13.jinja", PRS_TOOL_MISTRAL},
        {"minimax-m2.jinja", PRS_TOOL_MINIMAX_M2},
        {"qwen3-coder.jinja", PRS_TOOL_QWEN3_CODER},
        {"qwen3-coder-next.jinja", PRS_TOOL_QWEN3_CODER},
        {"qwen3.5.jinja", PRS_TOOL_QWEN3_CODER},
        {"qwen3.jinja", PRS_TOOL_HERMES},
        {"smollm2.jinja", PRS_TOOL_NONE},
        {"llama-3.1.jinja", PRS_TOOL_NONE},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/tests/fixtures/templates/%s", src, want[i].file);
        char *t = read_text(path);
        if (t == NULL) {
            fail_msg("cannot read %s", path);
        }
        if (prs_tool_format_from_template(t) != want[i].fmt) {
            fail_msg("%s: format %s, want %s", want[i].file,
                     prs_tool_format_name(prs_tool_format_from_template(t)),
                     prs_tool_format_name(want[i].fmt));
        }
        free(t);
    }
}

static void test_errors_and_state(void **state)
{
    (void)state;
    prs_tool_parser_t *p = NULL;
    json_t *obj = json_object();
    assert_int_equal(prs_tool_parser_create(PRS_TOOL_HERMES, obj, &p, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(prs_tool_parser_create((prs_tool_format_t)7, NULL, &p, NULL),
                     TDM_ERR_INVALID_PARAM);
    /* harmony has its own parser (harmony.h) */
    assert_int_equal(prs_tool_parser_create(PRS_TOOL_HARMONY, NULL, &p, NULL),
                     TDM_ERR_INVALID_PARAM);
    assert_null(p);
    json_decref(obj);
    prs_tool_parser_destroy(NULL);

    assert_int_equal(prs_tool_parser_create(PRS_TOOL_HERMES, NULL, &p, NULL), TDM_OK);
    assert_int_equal(prs_tool_parser_prime(p, TC, strlen(TC), NULL), TDM_OK);
    assert_true(prs_tool_parser_in_call(p));
    assert_int_equal(prs_tool_parser_n_events(p), 0);
    assert_int_equal(prs_tool_parser_feed(p, "{\"name\": \"f\"}", 13, NULL), TDM_OK);
    assert_int_equal(prs_tool_parser_prime(p, "x", 1, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(prs_tool_parser_feed(p, TE, strlen(TE), NULL), TDM_OK);
    assert_false(prs_tool_parser_in_call(p));
    assert_int_equal(prs_tool_parser_n_events(p), 3);
    const prs_tool_event_t *ev = prs_tool_parser_events(p);
    assert_int_equal(ev[0].kind, PRS_TOOL_EV_CALL_BEGIN);
    assert_string_equal(ev[0].text, "f");
    assert_int_equal(ev[1].kind, PRS_TOOL_EV_CALL_ARGS);
    assert_string_equal(ev[1].text, "{}");
    assert_int_equal(ev[2].kind, PRS_TOOL_EV_CALL_END);
    assert_int_equal(ev[2].len, 0);
    assert_int_equal(prs_tool_parser_finish(p, NULL), TDM_OK);
    assert_int_equal(prs_tool_parser_finish(p, NULL), TDM_OK);
    assert_int_equal(prs_tool_parser_feed(p, "x", 1, NULL), TDM_ERR_INVALID_PARAM);
    assert_int_equal(prs_tool_parser_n_calls(p), 1);
    prs_tool_parser_destroy(p);

    /* adjacent content is merged into one event; NUL bytes are carried by length */
    assert_int_equal(prs_tool_parser_create(PRS_TOOL_QWEN3_CODER, NULL, &p, NULL), TDM_OK);
    assert_int_equal(prs_tool_parser_feed(p, "ab", 2, NULL), TDM_OK);
    assert_int_equal(prs_tool_parser_feed(p, "c\0d", 3, NULL), TDM_OK);
    assert_int_equal(prs_tool_parser_n_events(p), 1);
    assert_int_equal(prs_tool_parser_events(p)[0].len, 5);
    assert_memory_equal(prs_tool_parser_events(p)[0].text, "abc\0d", 6);
    prs_tool_parser_destroy(p);
}

/* A call not closed within PRS_TOOL_MAX_CALL_BYTES is given back as content; one that
 * fits is a call. */
static void test_call_size_limit(void **state)
{
    (void)state;
    const size_t cap = PRS_TOOL_MAX_CALL_BYTES;
    static const struct {
        prs_tool_format_t fmt;
        const char *head, *tail;
    } fmts[] = {
        {PRS_TOOL_HERMES, TC "{\"name\": \"f\", \"arguments\": {\"s\": \"", "\"}}" TE},
        {PRS_TOOL_MISTRAL, TK "f" AR "{\"s\": \"", "\"}"},
    };
    for (size_t t = 0; t < 4; t++) {
        size_t fi = t / 2, over = t % 2;
        const char *head = fmts[fi].head, *tail = fmts[fi].tail;
        size_t pad = cap - strlen(head) - strlen(tail) + (size_t)over;
        size_t n = strlen(head) + pad + strlen(tail) + 2;
        char *in = malloc(n + 1);
        strcpy(in, head);
        memset(in + strlen(head), 'x', pad);
        strcpy(in + strlen(head) + pad, tail);
        strcat(in, "ok");
        const size_t chunks[] = {n, 4096, 3};
        for (size_t ch = 0; ch < 3; ch++) {
            prs_tool_parser_t *p = NULL;
            assert_int_equal(prs_tool_parser_create(fmts[fi].fmt, NULL, &p, NULL), TDM_OK);
            size_t content = 0, calls = 0;
            for (size_t at = 0, len = 0; at < n; at += len) {
                len = n - at < chunks[ch] ? n - at : chunks[ch];
                assert_int_equal(prs_tool_parser_feed(p, in + at, len, NULL), TDM_OK);
                if (at + len == n) {
                    assert_int_equal(prs_tool_parser_finish(p, NULL), TDM_OK);
                }
                for (size_t k = 0; k < prs_tool_parser_n_events(p); k++) {
                    const prs_tool_event_t *e = &prs_tool_parser_events(p)[k];
                    content += e->kind == PRS_TOOL_EV_CONTENT ? e->len : 0;
                    calls += e->kind == PRS_TOOL_EV_CALL_END;
                }
                prs_tool_parser_clear_events(p);
            }
            assert_int_equal(calls, over ? 0 : 1);
            assert_int_equal(content, over ? n : 2);
            if (!over) {
                assert_int_equal(strlen(prs_tool_parser_call_args(p, 0)), pad + 8);
            }
            prs_tool_parser_destroy(p);
        }
        free(in);
    }
}

/* The server's pipeline: reasoning first, its content into the tool parser. */
static void test_reasoning_then_tools(void **state)
{
    (void)state;
    const char *out = "<think>\nThe user wants the weather.\n</think>\n\n" TC
                      "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}" TE;
    for (size_t step = 1; step <= 7; step++) {
        prs_reasoning_t *r = NULL;
        prs_tool_parser_t *t = NULL;
        assert_int_equal(prs_reasoning_create(NULL, NULL, false, &r, NULL), TDM_OK);
        assert_int_equal(prs_tool_parser_create(PRS_TOOL_HERMES, NULL, &t, NULL), TDM_OK);
        prs_buf_t reasoning = {0};
        size_t n = strlen(out), content = 0;
        for (size_t at = 0, len = 0; at < n; at += len) {
            len = n - at < step ? n - at : step;
            assert_int_equal(prs_reasoning_feed(r, out + at, len, NULL), TDM_OK);
            if (at + len == n) {
                assert_int_equal(prs_reasoning_finish(r, NULL), TDM_OK);
            }
            prs_buf_t *c = prs_reasoning_content(r), *rs = prs_reasoning_reasoning(r);
            assert_int_equal(prs_buf_append(&reasoning, rs->data, rs->len), TDM_OK);
            assert_int_equal(prs_tool_parser_feed(t, c->data, c->len, NULL), TDM_OK);
            prs_buf_clear(c);
            prs_buf_clear(rs);
            for (size_t k = 0; k < prs_tool_parser_n_events(t); k++) {
                const prs_tool_event_t *e = &prs_tool_parser_events(t)[k];
                content += e->kind == PRS_TOOL_EV_CONTENT ? e->len : 0;
            }
            prs_tool_parser_clear_events(t);
        }
        assert_int_equal(prs_tool_parser_finish(t, NULL), TDM_OK);
        assert_int_equal(prs_tool_parser_n_events(t), 0);
        assert_string_equal(reasoning.data, "\nThe user wants the weather.\n");
        assert_int_equal(content, 0);
        assert_int_equal(prs_tool_parser_n_calls(t), 1);
        assert_string_equal(prs_tool_parser_call_name(t, 0), "get_weather");
        assert_string_equal(prs_tool_parser_call_args(t, 0), "{\"city\":\"Paris\"}");
        prs_buf_free(&reasoning);
        prs_reasoning_destroy(r);
        prs_tool_parser_destroy(t);
    }
}

/* The server's combined parser with the Mistral format: the model's ids reach the caller;
 * with no tools offered (calls off) a call is content. */
static void test_output_mistral(void **state)
{
    (void)state;
    const char *out =
        "Checking.\n" TK "get_weather" CI "a1B2c3D4e" AR "{\"city\": \"Paris\"}" TK "f" AR "{}";
    for (int calls = 0; calls <= 1; calls++) {
        prs_output_params_t pp = {.format = PRS_TOOL_MISTRAL, .calls = calls != 0};
        prs_output_t *o = NULL;
        assert_int_equal(prs_output_create(&pp, &o, NULL), TDM_OK);
        prs_buf_t content = {0};
        size_t n = strlen(out), begins = 0;
        for (size_t at = 0; at < n; at += 3) {
            assert_int_equal(prs_output_feed(o, out + at, n - at < 3 ? n - at : 3, NULL), TDM_OK);
            if (at + 3 >= n) {
                assert_int_equal(prs_output_finish(o, NULL), TDM_OK);
            }
            const prs_event_t *ev = prs_output_events(o);
            for (size_t k = 0; k < prs_output_n_events(o); k++) {
                if (ev[k].kind == PRS_EV_CONTENT) {
                    assert_int_equal(prs_buf_append(&content, ev[k].text, ev[k].len), TDM_OK);
                } else if (ev[k].kind == PRS_EV_CALL_BEGIN) {
                    /* the id is known when the call begins (the server streams it then) */
                    const char *id = prs_output_call_id(o, ev[k].call);
                    if (ev[k].call == 0) {
                        assert_string_equal(id, "a1B2c3D4e");
                    } else {
                        assert_null(id);
                    }
                    begins++;
                }
            }
            prs_output_clear_events(o);
        }
        if (calls) {
            assert_int_equal(begins, 2);
            assert_int_equal(prs_output_n_calls(o), 2);
            assert_string_equal(content.data, "Checking.\n");
            assert_string_equal(prs_output_call_args(o, 0), "{\"city\":\"Paris\"}");
            assert_null(prs_output_call_id(o, 2));
        } else {
            assert_int_equal(begins, 0);
            assert_int_equal(prs_output_n_calls(o), 0);
            assert_null(prs_output_call_id(o, 0));
            assert_string_equal(content.data, out);
        }
        prs_buf_free(&content);
        prs_output_destroy(o);
    }
    /* harmony calls have no ids of the model's */
    prs_output_params_t hp = {.format = PRS_TOOL_HARMONY, .calls = true};
    prs_output_t *h = NULL;
    assert_int_equal(prs_output_create(&hp, &h, NULL), TDM_OK);
    const char *hc = "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>";
    assert_int_equal(prs_output_feed(h, hc, strlen(hc), NULL), TDM_OK);
    assert_int_equal(prs_output_finish(h, NULL), TDM_OK);
    assert_int_equal(prs_output_n_calls(h), 1);
    assert_null(prs_output_call_id(h, 0));
    prs_output_destroy(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases_whole),
        cmocka_unit_test(test_cases_every_split),
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_formats_of_real_templates),
        cmocka_unit_test(test_errors_and_state),
        cmocka_unit_test(test_call_size_limit),
        cmocka_unit_test(test_reasoning_then_tools),
        cmocka_unit_test(test_output_mistral),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
