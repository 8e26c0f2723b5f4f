/* prs_buf.c - growable byte buffer and search helpers of the output parsers (see prs_buf.h). */
#include "api/parse/prs_buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

tdm_status_t prs_buf_append(prs_buf_t *b, const char *s, size_t n)
{
    if (n == 0 && b->data != NULL) {
        return TDM_OK;
    }
    if (n > SIZE_MAX / 2 - b->len - 1) {
        return TDM_ERR_NO_MEMORY;
    }
    size_t need = b->len + n + 1;
    if (need > b->cap) {
        size_t cap = b->cap < 64 ? 64 : b->cap;
        while (cap < need) {
            cap *= 2;
        }
        char *nd = realloc(b->data, cap);
        if (nd == NULL) {
            return TDM_ERR_NO_MEMORY;
        }
        b->data = nd;
        b->cap = cap;
    }
    if (n > 0) {
        memcpy(b->data + b->len, s, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
    return TDM_OK;
}

tdm_status_t prs_buf_append_str(prs_buf_t *b, const char *s)
{
    return prs_buf_append(b, s, strlen(s));
}

void prs_buf_consume(prs_buf_t *b, size_t n)
{
    if (n == 0) {
        return;
    }
    if (n >= b->len) {
        prs_buf_clear(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

void prs_buf_clear(prs_buf_t *b)
{
    b->len = 0;
    if (b->data != NULL) {
        b->data[0] = '\0';
    }
}

void prs_buf_free(prs_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

char *prs_buf_take(prs_buf_t *b)
{
    char *s = b->data;
    if (s == NULL) {
        s = malloc(1);
        if (s != NULL) {
            s[0] = '\0';
        }
    }
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return s;
}

size_t prs_find(const char *hay, size_t n, const char *needle, size_t m)
{
    if (m == 0 || m > n) {
        return m == 0 ? 0 : n;
    }
    const char *p = memmem(hay, n, needle, m);
    return p == NULL ? n : (size_t)(p - hay);
}

size_t prs_partial_start(const char *hay, size_t n, const char *needle, size_t m)
{
    if (m == 0) {
        return n;
    }
    size_t i = n > m - 1 ? n - (m - 1) : 0;
    for (; i < n; i++) {
        if (memcmp(hay + i, needle, n - i) == 0) {
            return i;
        }
    }
    return n;
}
