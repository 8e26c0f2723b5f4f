/*
 * stop_strings.c - hold-back matcher for stop strings (see stop_strings.h).
 *
 * held: text not yet released; it is always shorter than the longest stop string, so
 * each feed scans at most (longest - 1 + new text) bytes.
 */
#include "coordinator/stop_strings.h"

#include <stdlib.h>
#include <string.h>

struct crd_stop_strings {
    int n;
    char *stop[CRD_MAX_STOP_STRINGS];
    size_t stop_len[CRD_MAX_STOP_STRINGS];
    char *held; /* not yet released */
    size_t n_held, cap_held;
    char *out; /* released by the last call */
    size_t cap_out;
    int matched; /* index of the stop string found, or -1 */
};

tdm_status_t crd_stop_strings_create(const char *const *stops, int n, crd_stop_strings_t **out,
                                     tdm_error_t *err)
{
    *out = NULL;
    if (n < 0 || n > CRD_MAX_STOP_STRINGS) {
        return tdm_error_set(err, TDM_ERR_INVALID_PARAM, "at most %d stop strings are allowed",
                             CRD_MAX_STOP_STRINGS);
    }
    for (int i = 0; i < n; i++) {
        size_t len = strlen(stops[i]);
        if (len == 0 || len > CRD_MAX_STOP_LEN) {
            return tdm_error_set(err, TDM_ERR_INVALID_PARAM,
                                 "stop strings must be 1 to %d bytes long", CRD_MAX_STOP_LEN);
        }
    }
    crd_stop_strings_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for stop strings");
    }
    s->matched = -1;
    for (int i = 0; i < n; i++) {
        s->stop[i] = strdup(stops[i]);
        if (s->stop[i] == NULL) {
            crd_stop_strings_destroy(s);
            return tdm_error_set(err, TDM_ERR_NO_MEMORY, "out of memory for stop strings");
        }
        s->stop_len[i] = strlen(stops[i]);
        s->n = i + 1;
    }
    *out = s;
    return TDM_OK;
}

void crd_stop_strings_destroy(crd_stop_strings_t *s)
{
    if (s == NULL) {
        return;
    }
    for (int i = 0; i < s->n; i++) {
        free(s->stop[i]);
    }
    free(s->held);
    free(s->out);
    free(s);
}

static bool grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap) {
        return true;
    }
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        c *= 2;
    }
    char *nb = realloc(*buf, c);
    if (nb == NULL) {
        return false;
    }
    *buf = nb;
    *cap = c;
    return true;
}

/* Length of the longest tail of text[0, n) that is a proper prefix of some stop string. */
static size_t partial_tail(const crd_stop_strings_t *s, const char *text, size_t n)
{
    size_t best = 0;
    for (int i = 0; i < s->n; i++) {
        size_t k = s->stop_len[i] - 1 < n ? s->stop_len[i] - 1 : n;
        for (; k > best; k--) {
            if (memcmp(text + n - k, s->stop[i], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

/* Earliest occurrence of any stop string in text[0, n): its offset, and which in *which. */
static size_t first_match(const crd_stop_strings_t *s, const char *text, size_t n, int *which)
{
    size_t best = n;
    *which = -1;
    for (int i = 0; i < s->n; i++) {
        if (s->stop_len[i] > n) {
            continue;
        }
        const char *p = memmem(text, n, s->stop[i], s->stop_len[i]);
        if (p != NULL && (size_t)(p - text) < best) {
            best = (size_t)(p - text);
            *which = i;
        }
    }
    return best;
}

bool crd_stop_strings_feed(crd_stop_strings_t *s, const char *text, size_t len, const char **out,
                           size_t *out_len)
{
    *out = "";
    *out_len = 0;
    if (s->matched >= 0) {
        return true;
    }
    if (s->n == 0) {
        *out = text;
        *out_len = len;
        return false;
    }
    if (!grow(&s->held, &s->cap_held, s->n_held + len + 1)) {
        /* out of memory: release everything rather than lose text */
        *out = text;
        *out_len = len;
        return false;
    }
    memcpy(s->held + s->n_held, text, len);
    s->n_held += len;
    int which;
    size_t at = first_match(s, s->held, s->n_held, &which);
    size_t release = which >= 0 ? at : s->n_held - partial_tail(s, s->held, s->n_held);
    if (!grow(&s->out, &s->cap_out, release + 1)) {
        release = 0;
    }
    memcpy(s->out, s->held, release);
    s->out[release] = '\0';
    *out = s->out;
    *out_len = release;
    if (which >= 0) {
        s->matched = which;
        s->n_held = 0;
        return true;
    }
    memmove(s->held, s->held + release, s->n_held - release);
    s->n_held -= release;
    return false;
}

void crd_stop_strings_flush(crd_stop_strings_t *s, const char **out, size_t *out_len)
{
    *out = "";
    *out_len = 0;
    if (s->matched >= 0 || s->n_held == 0) {
        return;
    }
    if (!grow(&s->out, &s->cap_out, s->n_held + 1)) {
        return;
    }
    memcpy(s->out, s->held, s->n_held);
    s->out[s->n_held] = '\0';
    *out = s->out;
    *out_len = s->n_held;
    s->n_held = 0;
}

const char *crd_stop_strings_matched(const crd_stop_strings_t *s)
{
    return s->matched >= 0 ? s->stop[s->matched] : NULL;
}
