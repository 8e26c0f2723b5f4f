/*
 * gen_util.h - small pieces every generation route shares (chat completions, completions,
 * Responses): model text as JSON strings, and random ids.
 */
#ifndef SRV_GEN_UTIL_H
#define SRV_GEN_UTIL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* s[0..n) as a JSON string value, bytes that are not UTF-8 replaced by U+FFFD (a model can
 * stop in the middle of a character; jansson refuses such strings). Never NULL unless out
 * of memory. */
json_t *srv_json_lossy(const char *s, size_t n);

/* Writes "<prefix>_" (or "<prefix>-" when dash) and 24 random hex digits into buf. */
void srv_random_id(uint64_t rng[4], const char *prefix, char sep, char *buf, size_t size);

#endif
