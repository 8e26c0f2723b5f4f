/*
 * gen_util.c - JSON strings from model text, random ids.
 */
#include "api/server/gen_util.h"

#include "api/parse/prs_buf.h"
#include "api/parse/prs_json.h"
#include "coordinator/sampler.h"

#include <stdio.h>

json_t *srv_json_lossy(const char *s, size_t n)
{
    if (prs_utf8_valid(s, n)) {
        json_t *v = json_stringn(s, n);
        return v != NULL ? v : json_string("");
    }
    prs_buf_t b = {0};
    for (size_t i = 0; i < n;) {
        size_t k = prs_utf8_seq(s + i, n - i);
        if (k == 0) {
            prs_buf_append(&b, "\xEF\xBF\xBD", 3);
            i++;
        } else {
            prs_buf_append(&b, s + i, k);
            i += k;
        }
    }
    json_t *v = json_stringn(b.data != NULL ? b.data : "", b.len);
    prs_buf_free(&b);
    return v != NULL ? v : json_string("");
}

void srv_random_id(uint64_t rng[4], const char *prefix, char sep, char *buf, size_t size)
{
    unsigned long long a = crd_rng_next(rng), b = crd_rng_next(rng) & 0xffffffffu;
    snprintf(buf, size, "%s%c%016llx%08llx", prefix, sep, a, b);
}
