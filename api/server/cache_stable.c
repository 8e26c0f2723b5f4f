/*
 * cache_stable.c - the rewrites of `--cache-stable-prompts` (cache_stable.h says why).
 */
#include "api/server/cache_stable.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define BILLING_PREFIX "x-anthropic-billing-header:"
#define REMINDER_OPEN  "<system-reminder>"
#define REMINDER_CLOSE "</system-reminder>"

static bool role_is(const json_t *m, const char *role)
{
    const json_t *r = json_object_get(m, "role");
    return json_is_string(r) && strcmp(json_string_value(r), role) == 0;
}

static const char *content_of(const json_t *m, size_t *len)
{
    const json_t *c = json_object_get(m, "content");
    if (!json_is_string(c)) {
        *len = 0;
        return NULL;
    }
    *len = json_string_length(c);
    return json_string_value(c);
}

/* A growable byte buffer; ok turns false on the first failed allocation. */
typedef struct buf {
    char *p;
    size_t n, cap;
    bool ok;
} buf_t;

static void put(buf_t *b, const char *s, size_t n)
{
    if (!b->ok || n == 0) {
        return;
    }
    if (n > ((size_t)1 << 40) || b->n > ((size_t)1 << 40)) {
        b->ok = false; /* no message is that long; the bound also tells the compiler so */
        return;
    }
    if (b->p == NULL || b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->ok = false;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

/* Sets m's content to b's bytes (consumes b). */
static bool set_content(json_t *m, buf_t *b)
{
    bool ok = b->ok && json_object_set_new(m, "content", json_stringn(b->p ? b->p : "", b->n)) == 0;
    free(b->p);
    return ok;
}

/* ---- 1. the billing line -------------------------------------------------------------- */

static bool strip_billing(json_t *m)
{
    size_t len;
    const char *s = content_of(m, &len);
    if (s == NULL || memmem(s, len, BILLING_PREFIX, strlen(BILLING_PREFIX)) == NULL) {
        return true;
    }
    buf_t b = {.ok = true};
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(s + i, '\n', len - i);
        size_t end = nl != NULL ? (size_t)(nl - s) + 1 : len;
        size_t j = i;
        while (j < end && (s[j] == ' ' || s[j] == '\t')) {
            j++;
        }
        if (end - j < strlen(BILLING_PREFIX) ||
            strncmp(s + j, BILLING_PREFIX, strlen(BILLING_PREFIX)) != 0) {
            put(&b, s + i, end - i);
        }
        i = end;
    }
    return set_content(m, &b);
}

/* ---- 2. reminders that move ----------------------------------------------------------- */

static bool has_reminder(const json_t *m)
{
    size_t len;
    const char *s = content_of(m, &len);
    return s != NULL && memmem(s, len, REMINDER_OPEN, strlen(REMINDER_OPEN)) != NULL;
}

/* Takes every closed <system-reminder>...</system-reminder> out of m's content (with the
 * whitespace before it) into *out, one per line. */
static bool take_reminders(json_t *m, buf_t *out)
{
    size_t len;
    const char *s = content_of(m, &len);
    buf_t rest = {.ok = true};
    size_t i = 0;
    while (i < len) {
        const char *o = memmem(s + i, len - i, REMINDER_OPEN, strlen(REMINDER_OPEN));
        const char *c =
            o != NULL ? memmem(o, len - (size_t)(o - s), REMINDER_CLOSE, strlen(REMINDER_CLOSE))
                      : NULL;
        if (o == NULL || c == NULL) {
            break;
        }
        size_t start = (size_t)(o - s), stop = (size_t)(c - s) + strlen(REMINDER_CLOSE);
        size_t keep = start;
        while (keep > i && (s[keep - 1] == ' ' || s[keep - 1] == '\t' || s[keep - 1] == '\n' ||
                            s[keep - 1] == '\r')) {
            keep--;
        }
        put(&rest, s + i, keep - i);
        if (out->n > 0) {
            put(out, "\n", 1);
        }
        put(out, s + start, stop - start);
        i = stop;
    }
    put(&rest, s + i, len - i);
    return set_content(m, &rest);
}

static bool move_reminders(json_t *msgs)
{
    const size_t n = json_array_size(msgs);
    size_t last_user = n, n_user = 0;
    for (size_t i = 0; i < n; i++) {
        if (role_is(json_array_get(msgs, i), "user")) {
            last_user = i;
            n_user++;
        }
    }
    if (n_user < 2 || !has_reminder(json_array_get(msgs, last_user))) {
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        if (i != last_user && has_reminder(json_array_get(msgs, i))) {
            return true; /* the client keeps reminders in its history: leave them */
        }
    }
    buf_t rem = {.ok = true};
    if (!take_reminders(json_array_get(msgs, last_user), &rem) || rem.n == 0) {
        free(rem.p);
        return rem.ok; /* none closed: the content was put back as it was */
    }
    /* the tail: the last user or tool message (an assistant prefill stays last) */
    json_t *tail = NULL;
    for (size_t i = n; i-- > last_user && tail == NULL;) {
        json_t *m = json_array_get(msgs, i);
        if (role_is(m, "user") || role_is(m, "tool")) {
            tail = m;
        }
    }
    size_t len;
    const char *s = content_of(tail, &len);
    buf_t b = {.ok = true};
    put(&b, s, len);
    if (len > 0) {
        put(&b, "\n\n", 2);
    }
    put(&b, rem.p, rem.n);
    bool ok = rem.ok && set_content(tail, &b);
    free(rem.p);
    return ok;
}

json_t *srv_cache_stable_messages(const json_t *messages)
{
    json_t *msgs = json_deep_copy(messages);
    if (msgs == NULL) {
        return NULL;
    }
    bool ok = true;
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        if (role_is(m, "system") || role_is(m, "developer")) {
            ok = ok && strip_billing(m);
        }
    }
    ok = ok && move_reminders(msgs);
    if (!ok) {
        json_decref(msgs);
        return NULL;
    }
    return msgs;
}

/* ---- 3. tools with sorted keys -------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static json_t *sorted_copy(const json_t *v)
{
    if (json_is_array(v)) {
        json_t *a = json_array();
        size_t i;
        const json_t *x;
        json_array_foreach(v, i, x)
        {
            if (a == NULL || json_array_append_new(a, sorted_copy(x)) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    if (!json_is_object(v)) {
        return json_deep_copy(v);
    }
    const size_t n = json_object_size(v);
    const char **keys = malloc((n > 0 ? n : 1) * sizeof(*keys));
    json_t *o = json_object();
    if (keys == NULL || o == NULL) {
        free(keys);
        json_decref(o);
        return NULL;
    }
    size_t k = 0;
    const char *key;
    const json_t *x;
    json_object_foreach((json_t *)v, key, x)
    {
        keys[k++] = key;
    }
    qsort(keys, n, sizeof(*keys), cmp_str);
    for (size_t i = 0; i < n; i++) {
        json_t *c = sorted_copy(json_object_get(v, keys[i]));
        if (c == NULL || json_object_set_new(o, keys[i], c) != 0) {
            free(keys);
            json_decref(o);
            return NULL;
        }
    }
    free(keys);
    return o;
}

json_t *srv_cache_stable_tools(const json_t *tools)
{
    return tools != NULL ? sorted_copy(tools) : NULL;
}
