/*
 * prs_json.h - the small amount of JSON the output parsers need beyond jansson: a strict
 * validator that reports where a value ends, a minifier, a string escaper and unescaper.
 *
 * Why not only jansson: tool-call arguments are passed on as the model wrote them (less
 * insignificant whitespace). Re-serialising through jansson would rewrite numbers
 * (3.1 -> 3.1000000000000001), refuse integers beyond int64, and could not say where a value
 * ends inside a longer text. The validator follows RFC 8259, requires strings to be valid
 * UTF-8 and \u escapes to pair surrogates, and limits nesting to PRS_JSON_MAX_DEPTH, so
 * every text it accepts is also accepted by jansson and by Python's json module.
 */
#ifndef PRS_JSON_H
#define PRS_JSON_H

#include "api/parse/prs_buf.h"

#include <stdbool.h>
#include <stddef.h>

#define PRS_JSON_MAX_DEPTH 128

typedef enum prs_json_kind {
    PRS_JSON_INVALID = 0,
    PRS_JSON_OBJECT,
    PRS_JSON_ARRAY,
    PRS_JSON_STRING,
    PRS_JSON_NUMBER,
    PRS_JSON_TRUE,
    PRS_JSON_FALSE,
    PRS_JSON_NULL,
} prs_json_kind_t;

/* JSON's four whitespace characters. */
static inline bool prs_json_is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (1-4), or 0 when it is not one
 * (overlong forms, surrogates and code points above U+10FFFF are not). */
size_t prs_utf8_seq(const char *s, size_t n);

/* True when s[0..n) is entirely well-formed UTF-8. */
bool prs_utf8_valid(const char *s, size_t n);

/* Validates the one JSON value that starts at s[0] (no leading whitespace) and sets *end
 * to the index just past it. Returns its kind, or PRS_JSON_INVALID (then *end is unset). */
prs_json_kind_t prs_json_scan(const char *s, size_t n, size_t *end);

/* The kind of s[0..n) when it is exactly one JSON value with optional whitespace around
 * it, else PRS_JSON_INVALID. On success [*vb, *ve) is the value without the whitespace. */
prs_json_kind_t prs_json_whole(const char *s, size_t n, size_t *vb, size_t *ve);

/* One member of an object, as spans into the object's text. */
typedef struct prs_json_member {
    size_t key_b, key_e;  /* the key's string literal, quotes included */
    size_t val_b, val_e;  /* the value's text                          */
    prs_json_kind_t kind; /* the value's kind                          */
} prs_json_member_t;

/* Iterates over the members of a validated object s[0..n) (s[0] == '{'). Start with
 * *pos = 0; each call fills m and returns true, or returns false after the last member. */
bool prs_json_object_next(const char *s, size_t n, size_t *pos, prs_json_member_t *m);

/* True when the validated string literal s[0..n) decodes to exactly lit. */
bool prs_json_string_is(const char *s, size_t n, const char *lit);

/* Appends the decoded value of the validated string literal s[0..n) (UTF-8; \u0000 gives
 * a NUL byte). */
tdm_status_t prs_json_unescape(const char *s, size_t n, prs_buf_t *out);

/* Appends the validated JSON text s[0..n) with all whitespace outside strings removed. */
tdm_status_t prs_json_minify(const char *s, size_t n, prs_buf_t *out);

/* Appends s[0..n) as a JSON string literal: '"', '\\' and control characters escaped,
 * other UTF-8 copied as is, bytes that are not well-formed UTF-8 replaced by U+FFFD. */
tdm_status_t prs_json_escape(const char *s, size_t n, prs_buf_t *out);

#endif
